import multiprocessing

from presenced.cli.main import main

if __name__ == "__main__":
    # `serve --workers` and `simulate --processes` start processes with
    # "spawn"; in the one-file binary (scripts/build-binary) the children are
    # the binary itself, which this hands to multiprocessing. A no-op otherwise.
    multiprocessing.freeze_support()
    main()
