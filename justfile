# craft's everyday commands (https://just.systems); each is one plain command.

# the README's main job: train the default experiment (offline)
run *ARGS:
    python -m craft experiments/custom_cnn.toml {{ARGS}}

# the test suite, as CI runs it
test *ARGS:
    python -m pytest {{ARGS}}

# speed benchmarks: craft vs the imperative PyTorch loop
bench *ARGS:
    python benchmarks/step_speed.py {{ARGS}}
