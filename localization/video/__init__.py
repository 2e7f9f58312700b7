"""From video files to clip features: decoding, clips, frame transforms and the SlowFast backbone."""
