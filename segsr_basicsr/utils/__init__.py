"""Small helpers every room uses: the exit convention (cli), process groups (dist), progress, path/device checks."""
