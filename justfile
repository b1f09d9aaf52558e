# craft's everyday commands (https://just.systems); each is one plain command.

# train the quickstart example (offline)
run *ARGS:
    python experiments/quickstart.py {{ARGS}}

# the test suite, as CI runs it
test *ARGS:
    python -m pytest {{ARGS}}

# speed benchmarks: craft vs the imperative PyTorch loop
bench *ARGS:
    python benchmarks/step_speed.py {{ARGS}}
