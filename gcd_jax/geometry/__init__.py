"""GCD geometry: cameras, trajectories, point clouds, the point-cloud renderer, procedural 4D scenes.

Modules (import them explicitly; nothing heavy is imported here):
  cameras     spherical ↔ Cartesian, look-at extrinsics, Kubric/Blender ↔ OpenCV, intrinsics (NumPy).
  trajectory  construct_trajectory, relative angles/pose, motion bucket, §4.5–4.7 pose sampling (NumPy).
  pointcloud  RGB-D unprojection, Kubric's ray→plane depth correction, merging views (NumPy).
  render      the §4.8 point-cloud renderer, float32-stable, jittable (JAX).
  render_host the same renderer as compiled host loops (Numba): what the input pipeline runs on CPU cores.
  procedural  synthetic 4D scenes (physics + exact ray casting) written in Kubric-4D's layout (NumPy).
"""
