"""ControlNet at run time: spatial control of the U-Net by control images.

Contents:

- ``images``: control images prepared as diffusers' ControlNet pipelines prepare them
  (``prepare_control_image``).
- ``canny``: canny edge maps with OpenCV, as diffusers' ControlNet docs make them (the
  ``control`` extra); ``sdrt control canny`` writes one.
- ``spec``: the ``--control FILE[:SCALE[:START:END]]`` option of ``sdrt generate``, parsed
  into ``ControlSpec`` and turned into the call's keyword arguments.
"""
