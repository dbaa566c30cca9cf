"""Data: datasets in LeRobotDataset v3.0's layout (``dataset``) and the feature schema of robot state, actions
and commands that simulated and recorded data share (``features``)."""
