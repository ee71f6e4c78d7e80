"""Punctual CronJobs: warmlet pre-creates the Job the CronJob controller would create at an
instant, held on warmlet nodes until that instant (docs/design.md: "Punctual CronJobs")."""
