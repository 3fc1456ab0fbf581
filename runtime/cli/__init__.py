"""The command-line tools, thin click wrappers over the library: ``run`` (cifar-run),
``serve`` (cifar-serve), ``bench`` (cifar-bench), ``doctor`` (cifar-doctor); ``common`` holds
their shared options and the one place where errors become messages and exit codes."""
