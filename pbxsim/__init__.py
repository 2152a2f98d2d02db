"""A PBX simulator: drives a running stack (local or deployed) like a real phone system."""
