"""``python -m omp_init ...`` is ``omp-init ...`` (also under torchrun / accelerate launch)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
