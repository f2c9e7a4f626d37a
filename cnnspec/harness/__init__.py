"""Training: the epoch loop, phases, the bottleneck cache and the closed-form classifier, schedules,
starting weights, memory estimates, events and plots. Backend-neutral: a backend session supplies
build, train step, evaluate and weights (`cnnspec.backends.protocol`). Imports runs, data, backends and
inference (validation); nothing below it imports the harness."""
