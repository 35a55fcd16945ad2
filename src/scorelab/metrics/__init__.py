"""Sample-quality metrics: FID, Inception Score and class accuracy on shipped or Inception features."""
