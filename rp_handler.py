"""RunPod serverless worker: the entry point of the image (``CMD ["python", "-u", "rp_handler.py"]``).

    python rp_handler.py                          # on RunPod (or with test_input.json locally)
    python rp_handler.py --rp_serve_api           # local /run, /runsync, /status API
    python rp_handler.py --test_input '{"input": {"audio_url": "https://..."}}'

The worker itself lives in :mod:`parakeet_worker.serving.runpod_handler`.
"""

from parakeet_worker.serving.runpod_handler import TranscriptionService, main

__all__ = ["TranscriptionService", "main"]

if __name__ == "__main__":
    main()
