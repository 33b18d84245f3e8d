"""Where compiled code runs besides here: RPC trackers and servers, the emulated phone, OpenCL on PoCL, and the
cross compilers that link libraries for other devices. Below the schedules (Mali checks its code with
``opencl``); nothing here knows kernels or tuning.
"""
