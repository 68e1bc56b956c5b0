"""webapp/staticfiles.py: a few chosen files of a big npm package are static files, the rest are not."""

from django.contrib.staticfiles import finders

from webapp.staticfiles import NodeFilesFinder

ORT = "vendor/onnxruntime-web"


def test_only_the_chosen_onnxruntime_web_files_are_found_and_listed():
    finder = NodeFilesFinder()
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        assert finders.find(f"{ORT}/{name}").endswith(f"node_modules/onnxruntime-web/dist/{name}")
        assert finder.find(f"{ORT}/{name}", find_all=True) == [finders.find(f"{ORT}/{name}")]
    assert finders.find(f"{ORT}/ort.webgpu.min.js") is None  # in dist/, but not served
    assert finders.find(f"{ORT}/../package.json") is None
    listed = sorted(f"{storage.prefix}/{path}" for path, storage in finder.list(None))
    assert listed == [f"{ORT}/ort-wasm-simd-threaded.mjs", f"{ORT}/ort-wasm-simd-threaded.wasm", f"{ORT}/ort.wasm.min.js"]
    assert finder.check() == []


def test_missing_files_are_a_warning_that_says_to_run_make_node(settings, tmp_path):
    settings.STATICFILES_NODE_FILES = {ORT: (tmp_path, ["ort.wasm.min.js"])}
    finder = NodeFilesFinder()
    assert finder.find(f"{ORT}/ort.wasm.min.js") == [] and list(finder.list(None)) == []
    [warning] = finder.check()
    assert warning.id == "webapp.W001" and f"{ORT}/ort.wasm.min.js" in warning.msg and "make node" in warning.hint
