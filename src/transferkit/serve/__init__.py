"""``transferkit serve``: an HTTP service and web page over an exported model (FastAPI + uvicorn).

``create_app(load_runtime("model.onnx"))`` builds the application; ``run_server`` serves it.
"""

from transferkit.serve.app import Limits, UploadRejected, create_app, model_info
from transferkit.serve.model import ServeError, load_runtime, onnx_for, run_server

__all__ = ["Limits", "ServeError", "UploadRejected", "create_app", "load_runtime", "model_info", "onnx_for", "run_server"]
