"""Photos in, restored photos out: face landmarks, FFHQ alignment, paste-back."""
