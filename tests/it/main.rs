mod lm;
