"""Stage 2, data: one decoding path for files and stdin, lossless tables, classes, balancing and
splits, and the prepared folder that `gptclf prepare` writes and every later verb reads."""
