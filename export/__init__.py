"""iapc.export"""
