"""Live video: ``sources`` (what ``--camera SRC`` opens; ``picamera`` for a Raspberry Pi
camera), ``loop`` (classify frames; ``run_camera``, the live command) and ``outputs`` (the
overlay, the saved video, the window). OpenCV is imported only inside their functions."""
