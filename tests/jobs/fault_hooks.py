"""Fault injection for the fault tests, loaded only into the workers they start
(`celery worker --include tests.jobs.fault_hooks`); production code has no hook of its own.

PERCEPTOR_TEST_DIE_AT_STEP=N: the process training a job exits at once (os._exit, like an
out-of-memory kill: no cleanup, no exception) when training reaches optimizer step N.
PERCEPTOR_TEST_BATCH_CHUNK_S=S: every chunk of a batch prediction is slowed by S seconds.
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

# PERCEPTOR_TEST_BATCH_CHUNK_S=S: each chunk of a batch prediction takes at least S seconds more, so
# that a small archive is still being predicted when the test kills its worker.
BATCH_CHUNK_S = os.environ.get("PERCEPTOR_TEST_BATCH_CHUNK_S")

if BATCH_CHUNK_S:
    import time

    from celery.signals import task_prerun

    @task_prerun.connect(weak=False)
    def _slow_batch_chunks(**kwargs):
        from webapp.registry import batch  # Django is set up by the time a task runs

        if getattr(batch._predict_chunk, "slowed", False):
            return
        real_chunk = batch._predict_chunk

        def slow_chunk(*args):
            time.sleep(float(BATCH_CHUNK_S))
            return real_chunk(*args)

        slow_chunk.slowed = True
        batch._predict_chunk = slow_chunk
