"""iapc.ros_bridge"""
