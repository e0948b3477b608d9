# frozen_string_literal: true

module Rustq
  # Sidekiq's client middleware, run for rustq's pushes as Sidekiq::Client runs it: an app that
  # adds middleware in `Sidekiq.configure_client` (request or tenant ids, Sidekiq::CurrentAttributes'
  # "cattr", unique-jobs locks) gets it for `Rustq::Job`, `Rustq::Client` and `queue_adapter =
  # :rustq` pushes too. Each middleware is called as under Sidekiq — `(job class as given, job
  # Hash, queue, Sidekiq's Redis pool)` — once per job (bulk pushes included), sees the job as it
  # will be stored (jid, created_at, `at` when scheduled) and may change it; one that does not
  # yield stops that job's push (nil instead of its jid). Without Sidekiq, or with an empty chain,
  # pushes take the direct path and pay nothing for this.
  module ClientMiddleware
    class << self
      # The app's Sidekiq client middleware chain, or nil when there is none (or it is empty).
      def chain
        return unless defined?(::Sidekiq)

        chain = if ::Sidekiq.respond_to?(:default_configuration) # 7+
          ::Sidekiq.default_configuration.client_middleware
        elsif ::Sidekiq.respond_to?(:client_middleware) # 6.x
          ::Sidekiq.client_middleware
        end
        chain unless chain.nil? || chain.empty?
      end

      # Runs `chain` around `payload` (a job of class `klass` as the caller gave it); the payload
      # to push, or nil when a middleware stopped the push.
      def call(chain, klass, payload)
        chain.invoke(klass, payload, payload["queue"], redis_pool) { payload } || nil
      end

      private

      # What Sidekiq hands client middleware as its fourth argument (created lazily, connects
      # only if a middleware uses it).
      def redis_pool
        ::Sidekiq.respond_to?(:default_configuration) ? ::Sidekiq.default_configuration.redis_pool : ::Sidekiq.redis_pool
      end
    end
  end
end
