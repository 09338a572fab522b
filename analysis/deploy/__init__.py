"""Deploy what a study chose: ``branchy export`` writes a package (ONNX segments and gates, one graph with ``If``
nodes, ``plan.json``, a torch-free ``runner.py``) and ``branchy profile --import`` turns the runner's on-device
timings into a measured profile of the cache."""
