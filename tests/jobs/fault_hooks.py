"""Fault injection for the fault tests, loaded only into the workers they start
(`celery worker --include tests.jobs.fault_hooks`); production code has no hook of its own.

PERCEPTOR_TEST_DIE_AT_STEP=N: the process training a job exits at once (os._exit, like an
out-of-memory kill: no cleanup, no exception) when training reaches optimizer step N.
"""

import os

DIE_AT_STEP = os.environ.get("PERCEPTOR_TEST_DIE_AT_STEP")

if DIE_AT_STEP:
    import ml

    _real_train = ml.train

    def _train_then_die(config, data, *, callbacks=(), **kwargs):
        def die(event):
            if event.kind in ("step", "epoch") and event.step >= int(DIE_AT_STEP):
                os._exit(70)

        return _real_train(config, data, callbacks=[*callbacks, die], **kwargs)

    ml.train = _train_then_die
