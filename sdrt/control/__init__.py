"""ControlNet at run time: spatial control of the U-Net by control images.

The folder's graphs come from ``sdrt build --controlnet`` (export/controlnet.py). Contents:

- ``settings``: a call's control images, scales and guidance windows checked against the
  folder's ControlNets.
- ``conditioning``: the ControlNets' ``controlnet_cond``: ``images`` for 3-channel ones,
  1-channel ones' images in [0, 1].
- ``residuals``: per step, the ControlNets run and their residuals summed for the U-Net
  that takes them (MultiControlNet).
- ``images``: control images prepared as diffusers' ControlNet pipelines prepare them
  (``prepare_control_image``).
- ``canny``: canny edge maps with OpenCV, as diffusers' ControlNet docs make them (the
  ``control`` extra); ``sdrt control canny`` writes one.
- ``spec``: the ``--control FILE[:SCALE[:START:END]]`` option of ``sdrt generate``, parsed
  into ``ControlSpec`` and turned into the call's keyword arguments.
- ``adapter``: T2I-Adapter (``sdrt build --t2i-adapter``): a call's ``adapter_image`` and
  settings checked, its features made once per call; ``adapter_spec``: ``sdrt generate
  --adapter-image``.
"""
