"""`python -m solutions.scenes OUT_DIR`: writes a scenes dataset (see `dataset.main`)."""

from solutions.scenes.dataset import main

main()
