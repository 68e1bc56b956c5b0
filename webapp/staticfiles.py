"""A static files finder for a few chosen files of an npm package.

STATICFILES_DIRS can only expose whole folders, and onnxruntime-web's dist/ holds 136 MB of
builds (WebGPU, WebGL, JSEP, JSPI, …) of which the model page needs three files: the WASM-only
runtime and its .mjs/.wasm pair (15 MB). Serving or collecting the rest would only cost space.

    STATICFILES_NODE_FILES = {"vendor/onnxruntime-web": (dist_folder, ["ort.wasm.min.js", ...])}

serves each file at STATIC_URL + "<prefix>/<name>", through WhiteNoise and collectstatic alike.
"""

from django.conf import settings
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Warning
from django.core.files.storage import FileSystemStorage


class NodeFilesFinder(BaseFinder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files: dict[str, tuple[str, FileSystemStorage]] = {}  # "<prefix>/<name>" -> (name, storage)
        for prefix, (folder, names) in getattr(settings, "STATICFILES_NODE_FILES", {}).items():
            storage = FileSystemStorage(location=folder)
            storage.prefix = prefix  # where collectstatic and WhiteNoise put the files
            for name in names:
                self.files[f"{prefix}/{name}"] = (name, storage)

    def check(self, **kwargs):
        missing = [path for path, (name, storage) in self.files.items() if not storage.exists(name)]
        if not missing:
            return []
        return [Warning(f"Static files missing from node_modules: {', '.join(missing)}.",
                        hint="Run `make node` (npm ci) to install the front-end packages.", id="webapp.W001")]

    def find(self, path, find_all=False, **kwargs):
        name, storage = self.files.get(path, (None, None))
        if storage is None or not storage.exists(name):
            return []  # what Django's finders return for "not here" (None would count as a match)
        return [storage.path(name)] if find_all else storage.path(name)

    def list(self, ignore_patterns):
        for name, storage in self.files.values():
            if storage.exists(name):
                yield name, storage
