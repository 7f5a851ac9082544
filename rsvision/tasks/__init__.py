"""Lightning modules and datamodules, one file per task family."""
