"""CPU image building blocks of the stages: validation (validate), pet detection (detect),
stylisation (generate), background removal and resizing (matte). See docs/imaging.md.

Deliberately empty: `imgpipe.imaging.errors` must stay importable without OpenCV or NumPy.
"""
