"""A property-based test (Hypothesis) of the job state machine: any sequence of what users, workers
and the reaper can do to a job only ever makes legal transitions, and keeps the lease, the attempts
and the timestamps consistent.

Each example drives one fresh job through the real services (conditional UPDATEs on the test
database); a worker's crash is its heartbeat going stale.
"""

from datetime import timedelta

import pytest
from django.utils.timezone import now
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from jobs import services
from jobs.models import Job

pytestmark = pytest.mark.django_db

S = Job.Status
LEGAL = {
    S.QUEUED: {S.QUEUED, S.RUNNING, S.CANCELLED, S.FAILED},
    S.RUNNING: {S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED},
    S.CANCELLED: {S.CANCELLED, S.QUEUED},
    S.FAILED: {S.FAILED, S.QUEUED},
    S.SUCCEEDED: {S.SUCCEEDED},
}


def machine_for(owner, dataset):
    class JobLifecycle(RuleBasedStateMachine):
        @initialize()
        def create(self):
            self.job = Job.objects.create(owner=owner, dataset=dataset, config={"arch": "seed_cnn", "epochs": 1})
            self.status = S.QUEUED
            self.lease = ""

        def _reload(self) -> Job:
            return Job.objects.get(pk=self.job.pk)

        def _moved(self, job: Job) -> None:
            assert job.status in LEGAL[self.status], f"illegal transition {self.status} -> {job.status}"
            self.status, self.lease = S(job.status), job.lease

        # --- Workers --------------------------------------------------------------------------
        @rule()
        def a_worker_takes_the_task(self):
            before = self._reload()
            claimed = services._claim(self.job.pk, "cpu")
            after = self._reload()
            if claimed is not None:
                assert before.status in (S.QUEUED, S.RUNNING) and after.status == S.RUNNING
                assert after.attempts == before.attempts + 1 and after.lease != before.lease
            elif before.status == S.RUNNING and before.heartbeat_at and before.heartbeat_at > now() - timedelta(seconds=5):
                assert (after.status, after.lease) == (S.RUNNING, before.lease), "a live job was taken over"
            self._moved(after)

        @rule(succeeded=st_bool())
        def the_holder_finishes(self, succeeded):
            status = S.SUCCEEDED if succeeded else S.FAILED
            services._finish(self.job.pk, from_status=S.RUNNING, lease=self.lease or "-", status=status)
            self._moved(self._reload())

        @rule()
        def a_process_that_lost_the_lease_tries_to_finish(self):
            changed = services._finish(self.job.pk, from_status=S.RUNNING, lease="not-the-lease", status=S.SUCCEEDED)
            assert not changed
            self._moved(self._reload())

        @rule()
        def the_holder_dies_and_the_reaper_runs(self):
            Job.objects.filter(pk=self.job.pk, status=S.RUNNING).update(heartbeat_at=now() - timedelta(hours=1))
            services.job_reap()
            self._moved(self._reload())

        # --- Users ----------------------------------------------------------------------------
        @rule()
        def the_user_cancels(self):
            was = self._reload().status  # the services refresh the object they are given
            try:
                services.job_cancel(job=self._reload())
            except services.JobStateError:
                assert was in Job.FINISHED and self._reload().status == was
            self._moved(self._reload())

        @rule(with_checkpoint=st_bool())
        def the_user_resumes(self, with_checkpoint):
            path = services.job_checkpoint_path(self.job.pk)
            if with_checkpoint:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"checkpoint")
            else:
                path.unlink(missing_ok=True)
            was = self._reload().status
            try:
                services.job_resume(job=self._reload())
            except services.JobStateError:
                assert self._reload().status == was
            else:
                assert was in (S.CANCELLED, S.FAILED) and with_checkpoint
            self._moved(self._reload())

        @rule()
        def the_user_retries(self):
            was = self._reload().status
            try:
                services.job_retry(job=self._reload())
            except services.JobStateError:
                assert was not in (S.CANCELLED, S.FAILED)
            else:
                assert self._reload().step == 0
            self._moved(self._reload())

        # --- What must always hold ------------------------------------------------------------
        @invariant()
        def the_row_is_consistent(self):
            job = self._reload()
            assert job.attempts <= job.max_attempts
            if job.status == S.RUNNING:
                assert job.lease and job.heartbeat_at is not None and job.claimed_by
            if job.status == S.QUEUED:
                assert job.lease == "" and job.finished_at is None
            if job.status in Job.FINISHED:
                assert job.finished_at is not None

    return JobLifecycle


def st_bool():
    from hypothesis import strategies

    return strategies.booleans()


def test_any_sequence_of_user_worker_and_reaper_actions_makes_only_legal_transitions(alice, dataset, pushes):
    run_state_machine_as_test(
        machine_for(alice, dataset),
        settings=settings(max_examples=40, stateful_step_count=12, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]),
    )
