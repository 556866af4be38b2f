"""iapc.adapt"""
