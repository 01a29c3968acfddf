"""ControlNet at run time: a call's control images, scales and guidance windows checked
(settings.py), the images prepared as diffusers' ControlNet pipelines prepare them
(conditioning.py), and per step the ControlNets run and their residuals summed for the
U-Net that takes them (residuals.py). The folder's graphs come from ``sdrt build
--controlnet`` (export/controlnet.py)."""
