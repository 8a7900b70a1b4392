"""kernelzoo.export: SavedModel and ONNX export."""
