"""From a trained model to scored detections: whole-video prediction, post-processing, evaluation."""
