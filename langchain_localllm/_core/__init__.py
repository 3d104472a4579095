"""What every backend and model class shares.

The backend interface, settings, output, cache, thread bridges, stop strings, messages,
tools and structured output.
"""
