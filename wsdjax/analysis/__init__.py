"""Reading runs back: evaluate and sample saved states, compare schedules, fit scaling
laws, the river-valley picture, and the plots of them."""
