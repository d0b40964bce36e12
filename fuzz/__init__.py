"""atheris fuzz targets for ovs (see targets.py, run.py, make_seeds.py)."""
