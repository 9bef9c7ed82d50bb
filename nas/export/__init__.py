"""Export of a trained Arch, each format loaded back and checked against the trained model.

- :mod:`nas.export.exporter`: ``export_model`` writes the chosen formats and checks them;
- :mod:`nas.export.packed`: ``model.npk``, the chosen network's tensors with quantized weights
  bit-packed at their trained bit-width;
- :mod:`nas.export.to_onnx`: the ONNX graph (int8 QDQ where both bit-widths are 8 or less);
- :mod:`nas.export.to_stablehlo`: StableHLO with a symbolic batch;
- :mod:`nas.export.to_tflite`: a TFLite flatbuffer written from the block programs (LiteRT);
- the arch JSON (:mod:`nas.archfile`) and orbax checkpoints (:mod:`nas.training.checkpoint`).
"""
