"""Images in and out: decoding and resizing to the model's input (``preprocess``, the one
function every path uses), naming inputs (``inputs``), and drawing labels (``draw``)."""
