"""The harness: experiments as files, open-model load, samplers, ceilings, reports (issue 7).

Pure cores (``model``, ``schedule``, ``search``, ``stats``) import no I/O library; the I/O
shells (``loadgen``, ``samplers``, ``ceilings``, ``runner``, ``report``) stay thin around them.
"""
