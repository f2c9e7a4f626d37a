"""The one path from a run to answers: engines (the backend session or onnxruntime), the runtime
choice and its verification, `Scorer`, evaluation, predict, and features over collections.
Imports runs, data, backends and porting (to build the ONNX engine); never the harness."""
