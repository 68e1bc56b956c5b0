"""Batch prediction over the real parts: an archive uploaded over HTTP to Daphne, predicted by a
Celery worker process (tests/live.py) while the client watches the progress, then the CSV.
"""

import csv
import io
import time
import urllib.request

import pytest
from rest_framework.authtoken.models import Token

from tests.test_golden_chain import Api
from tests.webapp.test_batch import BAD_IMAGES, image_members, store_model, zip_bytes
from tests.webapp.test_registry import train_result  # noqa: F401 - shared session fixture

pytestmark = pytest.mark.integration

FILES = 4000  # 8×8 images: a few seconds of the worker's time, long enough to watch the bar move


def test_an_archive_uploaded_over_http_is_predicted_by_the_worker_with_progress_then_the_csv(
        live, alice, train_result):  # noqa: F811 - the fixture
    model = store_model(train_result, alice)
    api = Api(live.url, Token.objects.create(user=alice).key)
    archive = zip_bytes(image_members(FILES))

    with live.paused_worker():  # held, so that the whole run can be watched from its start
        status, batch = api.call("POST", f"/api/models/{model.pk}/batches/",
                                 files={"archive": ("photos.zip", archive)})
        assert status == 202, batch
        assert (batch["status"], batch["done"], batch["total"]) == ("queued", 0, FILES + len(BAD_IMAGES))

    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, batch = api.call("GET", f"/api/batches/{batch['id']}/")
        assert status == 200, batch
        seen.append((batch["status"], batch["done"]))
        if batch["status"] in ("succeeded", "failed", "cancelled"):
            break
        live.check_alive()
        time.sleep(0.05)
    assert batch["status"] == "succeeded", (batch, live.log_tails())
    running = [done for state, done in seen if state == "running"]
    assert running and any(0 < done < batch["total"] for done in running), seen  # the bar moved
    assert running == sorted(running)

    # The page's own status view answers the same, over the session.
    code, body = live.get(f"/models/batches/{batch['id']}/status/", user=alice)
    assert code == 200 and '"status": "succeeded"' in body

    request = urllib.request.Request(batch["csv"], headers={"Authorization": f"Token {api.token}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/csv"
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(rows) == FILES + len(BAD_IMAGES)
    assert {row["file"] for row in rows if row["error"]} == set(BAD_IMAGES)
    right = sum(row["top1"] == row["file"].split("/")[0] for row in rows if not row["error"])
    assert right >= 0.95 * FILES
