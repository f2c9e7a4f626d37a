"""The backend-neutral training harness: data, the epoch loop, metrics, checkpoints,
run directories, progress and plots. It never imports a framework; a backend supplies
build, forward, a train step and weights in and out (see ``protocol.py``)."""
