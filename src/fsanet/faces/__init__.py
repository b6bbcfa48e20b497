"""Head pose in the wild: the face record, the estimator (detector + crop + engine), predict
over files, tracking and the video pipeline.
"""
