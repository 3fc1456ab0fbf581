"""The model: an ONNX file that describes itself (contract, class names, reference answers),
opened in an onnxruntime session on the best provider, and answers as Predictions.

  contract    InputContract: what the ONNX input takes (size, layout, raw 0-255 RGB)
  session     one onnxruntime session, its threads and provider options
  providers   which execution providers exist here, and the order to try them
  classifier  Classifier -> Prediction / FileResult: the Python API
  batching    images in batches of one onnxruntime call, failures kept in place
  bundled     the model and sample images shipped in the package
  confidence  softmax, temperature scaling, ECE: what a probability means
  selfcheck   the reference answers in the file, checked on this machine
"""
