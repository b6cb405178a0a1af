"""Model families: preprocessing (OpenCV) and postprocessing, separate from runtimes."""
