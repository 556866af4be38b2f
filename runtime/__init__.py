"""iapc.runtime"""
