"""What differs between kinds of task (single-label softmax, multi-label sigmoid): losses, metrics,
decisions chosen on validation and temperature scaling."""
