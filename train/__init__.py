"""YOLOv5 training recipe, configured by Hydra (conf/) and recorded in MLflow. Run: python -m train"""
