"""What every eBPF source shares: the BPF ring buffer reader, and handing back the memory the
in-process compiler (bcc's LLVM) leaves behind after a load."""
