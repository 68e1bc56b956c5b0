"""The live feed of one job: history from the database first, then the events its worker pushes."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.events import job_group
from jobs.models import Job
from jobs.services import job_history
from webapp.ownership import owned_by

# Sent to anyone who may not see the job (or who is not logged in), exactly as a 404 would be:
# the close code tells the page not to retry. 4000-4999 are free for applications (RFC 6455).
CLOSE_NOT_FOUND = 4404


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = None
        job = await database_sync_to_async(_visible_job)(self.scope.get("user"), self.scope["url_route"]["kwargs"]["job_id"])
        # Accept, then close: closing during the handshake reaches a browser as a bare failure
        # (HTTP 403), and the page could not tell "not yours" from "server down, retry".
        await self.accept()
        if job is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading the history, so that nothing pushed in between is lost; the page
        # drops the few points it may then receive twice.
        self.group = job_group(job.id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        history = await database_sync_to_async(job_history)(job=job)
        await self.send_json({"type": "history", **history})

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        pass  # the feed is one-way (cancelling is a POST, so it gets CSRF protection): ignore input

    async def job_progress(self, event):
        await self.send_json({"type": "progress", "job": event["job"], "point": event.get("point"),
                              "phase": event.get("phase")})

    async def job_status(self, event):
        message = {"type": "status", "job": event["job"]}
        if event.get("rewind_to_step") is not None:  # a resumed run: points past this step are redone
            message["rewind_to_step"] = event["rewind_to_step"]
        await self.send_json(message)


def _visible_job(user, job_id) -> Job | None:
    if user is None:
        return None
    return owned_by(Job.objects.all(), user).filter(pk=job_id).first()
